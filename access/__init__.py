"""Who may do what: bearer tokens (JWT) naming a principal, its roles and the accounts it may touch."""
