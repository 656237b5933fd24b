"""Regenerate docs/*-help.txt from the command-line tools (tests/test_docs.py checks them).

    python docs/update_help.py
"""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HELP_COMMANDS = {
    'train-help.txt':        [['train.py', '--help']],
    'generate-help.txt':     [['generate.py', '--help']],
    'fid-help.txt':          [['fid.py', '--help'], ['fid.py', 'calc', '--help'], ['fid.py', 'ref', '--help'], ['fid.py', 'sqa', '--help'],
                             ['fid.py', 'gen', '--help']],
    'dataset-tool-help.txt': [['dataset_tool.py', '--help']],
    'export-help.txt':       [['-m', 'training.export', '--help']],
}

def render(commands):
    """The --help output of each command, run from the repository root at a fixed width."""
    env = dict(os.environ, COLUMNS='100')
    texts = []
    for args in commands:
        result = subprocess.run([sys.executable] + args, cwd=REPO, env=env, capture_output=True, text=True, check=True)
        texts.append(f'$ python {" ".join(args)}\n\n{result.stdout}')
    return '\n'.join(texts)

def main():
    for name, commands in HELP_COMMANDS.items():
        path = os.path.join(REPO, 'docs', name)
        text = render(commands)
        if not os.path.exists(path) or open(path).read() != text:
            with open(path, 'w') as f:
                f.write(text)
            print(f'updated docs/{name}')

if __name__ == '__main__':
    main()
