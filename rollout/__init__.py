"""Data plane: the KServe v2 gateway, its routing table and rollout policies. No FastAPI, no SQL."""
