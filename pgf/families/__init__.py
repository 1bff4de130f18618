"""Model families: each module here declares one family for the rest of pgf."""
