"""Plain ML code for CompX (model loading, generation, DPO training); never imports Django."""
