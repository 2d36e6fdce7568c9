"""The swarm's nodes: which one holds each target's data (placement), and the operator's view
of the nodes (status, quorum, join tokens, drain)."""
