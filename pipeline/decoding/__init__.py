"""The decoding engine: one block loop (``loop``), pluggable policies (``policies``), block features
(``features``) and the typed decode setting (``settings``, torch-free so configs validate without torch)."""
