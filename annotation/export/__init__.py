"""DPO dataset export: frozen snapshots in TRL's formats."""
