"""The real services the server tests stand on: PostgreSQL refuses a wrong password, SeaweedFS a wrong key."""

from __future__ import annotations

import os

import pytest

from helpers.services import postgres, seaweedfs

pytestmark = pytest.mark.server


def test_postgres_accepts_the_mlflow_role_and_refuses_a_wrong_password(tmp_path):
    import sqlalchemy

    with postgres(tmp_path / "postgres") as uri:
        engine = sqlalchemy.create_engine(uri)
        with engine.connect() as connection:
            who = connection.execute(sqlalchemy.text("SELECT current_user, current_database()")).one()
        assert who == ("mlflow", "mlflow")
        engine.dispose()
        password = uri.split(":")[2].split("@")[0]
        wrong = sqlalchemy.create_engine(uri.replace(password, "wrong-password"))
        with pytest.raises(sqlalchemy.exc.OperationalError, match="password authentication failed"):
            wrong.connect()


def test_seaweedfs_round_trips_an_object_and_refuses_other_keys(tmp_path):
    import boto3
    import botocore.exceptions

    with seaweedfs(tmp_path / "s3", "hpcsweep-key", "hpcsweep-secret", "artifacts") as url:

        def client(access_key: str, secret_key: str):
            return boto3.client(
                "s3",
                endpoint_url=url,
                aws_access_key_id=access_key,
                aws_secret_access_key=secret_key,
                region_name="us-east-1",
            )

        good = client("hpcsweep-key", "hpcsweep-secret")
        body = os.urandom(1 << 20)
        good.put_object(Bucket="artifacts", Key="one/megabyte.bin", Body=body)
        assert good.get_object(Bucket="artifacts", Key="one/megabyte.bin")["Body"].read() == body
        for key, secret, code in (
            ("hpcsweep-key", "wrong", "SignatureDoesNotMatch"),
            ("wrong-key", "hpcsweep-secret", "InvalidAccessKeyId"),
        ):
            with pytest.raises(botocore.exceptions.ClientError) as refused:
                client(key, secret).get_object(Bucket="artifacts", Key="one/megabyte.bin")
            assert refused.value.response["Error"]["Code"] == code
        with pytest.raises(botocore.exceptions.ClientError) as missing:
            good.head_bucket(Bucket="no-such-bucket")
        assert missing.value.response["Error"]["Code"] == "404"
