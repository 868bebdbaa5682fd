"""Neural-network building blocks shared by genlab's model families (the transformer)."""
