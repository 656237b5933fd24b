"""docs/*-help.txt must equal the --help output of the command-line tools."""

import concurrent.futures
import importlib.util

import pytest

def load_update_help(repo):
    spec = importlib.util.spec_from_file_location('update_help', repo / 'docs' / 'update_help.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

@pytest.mark.parametrize('name', ['train-help.txt', 'generate-help.txt', 'fid-help.txt', 'dataset-tool-help.txt', 'export-help.txt'])
def test_help_text_matches_cli(repo, name):
    update_help = load_update_help(repo)
    commands = update_help.HELP_COMMANDS[name]
    # render() of all commands is the blank-line join of render() of each; the tools start in parallel
    # (each start imports torch, which is most of the time).
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        expected = '\n'.join(pool.map(lambda command: update_help.render([command]), commands))
    assert (repo / 'docs' / name).read_text() == expected, f'docs/{name} drifted from the CLI; run python docs/update_help.py'
