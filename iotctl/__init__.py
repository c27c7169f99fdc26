"""``iotctl``: the command-line tool for operators and developers."""
