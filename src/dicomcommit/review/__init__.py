"""Review: what a manifest row is, how a conflict's two files differ, and the HTML report."""
