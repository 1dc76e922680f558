"""A member: its model (a LoRA adapter on a shared base), its private data, and what it does with them:
train, answer, compute its competence, filter its upload, evaluate itself."""
