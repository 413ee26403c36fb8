"""Holds only the mitmproxy entry script, alone in its folder.

mitmproxy puts a script's folder first on ``sys.path``; keeping the script
here, with no sibling modules, means nothing it sits beside can shadow an
installed module.
"""
