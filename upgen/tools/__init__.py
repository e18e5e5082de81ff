"""Layer 2 (below cli): the commands built on everything else: quickstart, bench, demo,
`upgen sample`, and the quickstart's recipe and reconstruction check."""
