import sys

import pytest

from retrieval.pgdb import Database, DatabaseError


@pytest.mark.parametrize("module", ["psycopg", "psycopg_pool", "pgvector"])
def test_postgres_backend_without_its_client_libraries_names_the_extra(monkeypatch, module):
    monkeypatch.setitem(sys.modules, module, None)  # as if the postgres extra were not installed
    with pytest.raises(DatabaseError, match=rf"{module} is not installed.*agro-mcp\[postgres\]"):
        Database("postgresql://127.0.0.1:1/none")


def test_cli_reports_the_missing_postgres_extra_as_a_user_error(monkeypatch, tmp_path, capsys):
    from agro_mcp import cli

    monkeypatch.setitem(sys.modules, "psycopg", None)
    monkeypatch.delenv("AGRO_CONFIG", raising=False)
    monkeypatch.setenv("AGRO_BACKEND", "postgres")
    monkeypatch.setenv("AGRO_DATABASE_URL", "postgresql://127.0.0.1:1/none")
    assert cli.main(["--home", str(tmp_path), "status"]) == 2
    err = capsys.readouterr().err
    assert "agro: " in err and "agro-mcp[postgres]" in err
