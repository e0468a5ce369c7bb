"""The database side: schema, dialect differences, and the SQL of each concern."""
