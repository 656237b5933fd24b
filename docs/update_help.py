"""Regenerate docs/*-help.txt from the command-line tools, or check them with --check.

    python docs/update_help.py          # rewrite the help texts
    python docs/update_help.py --check  # exit 1 and name the files that drifted from the CLIs
"""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HELP_COMMANDS = {
    'train-help.txt':        [['train.py', '--help']],
    'generate-help.txt':     [['generate.py', '--help']],
    'fid-help.txt':          [['fid.py', '--help'], ['fid.py', 'calc', '--help'], ['fid.py', 'ref', '--help'], ['fid.py', 'sqa', '--help']],
    'dataset-tool-help.txt': [['dataset_tool.py', '--help']],
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
    check = '--check' in sys.argv[1:]
    drifted = []
    for name, commands in HELP_COMMANDS.items():
        path = os.path.join(REPO, 'docs', name)
        text = render(commands)
        current = open(path).read() if os.path.exists(path) else None
        if check:
            if current != text:
                drifted.append(name)
        elif current != text:
            with open(path, 'w') as f:
                f.write(text)
            print(f'updated docs/{name}')
    if drifted:
        print(f'help texts out of date: {", ".join(drifted)}; run: python docs/update_help.py')
        sys.exit(1)

if __name__ == '__main__':
    main()
