"""Lightning callbacks for pruning inside a trainer."""
