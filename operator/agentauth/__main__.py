import sys

from agentauth import cli

sys.exit(cli.main())
