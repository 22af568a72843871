"""Repo entry: `python run.py method=sft`, `python run.py -m method=sft,reward`.

The same as the installed `rlhf-exp` console script (rlhf_exp/cli.py).
"""

from rlhf_exp.cli import main

if __name__ == "__main__":
    main()
