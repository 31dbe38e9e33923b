"""MTF world: a seeded recommender simulator with ground-truth long-term value."""
