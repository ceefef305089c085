"""lbmanager's chaos soak (issue 23): scripts/soak.sh --minutes N [--seed S]."""
