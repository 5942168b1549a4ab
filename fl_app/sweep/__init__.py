"""A Hydra sweep as one Flower simulation per federation shape (the `medforge` Hydra launcher)."""
