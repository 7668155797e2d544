"""The recommender: interactions (data), the fixed evaluation protocol (evaluate), baselines,
the posterkg GNN (model, losses), training (train) and stored models (api)."""
