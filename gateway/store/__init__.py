"""All SQL of the gateway, one module per aggregate (deliveries, emails, people,
records, conversations, dropboxes, organisations, users, quota, quarantine), plus the
engines and transactions (db.py), the SQLite loop writer (writer.py) and the commit
of a filing plan (filing.py).

Every function takes the caller's ``Connection``: the caller opens the transaction
(``db.Database.write()`` / ``rolled_back()`` / ``read()``, or a savepoint in the loop
writer's batch) and decides whether it commits.  What must be exact across gateway
processes is a constraint and one atomic statement, never a read-then-write in Python.
"""
