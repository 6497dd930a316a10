"""One module per screen: dashboard, models, keys, health and logs, help; their forms and modals."""
