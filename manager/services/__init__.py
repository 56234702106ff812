"""Use cases of the control plane. The API and the CLI call these; these call the store, the
converters, the repository builder, the Triton client and the gateway's admin port."""
