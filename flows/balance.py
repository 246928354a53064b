"""balance: oversample the training split to min_per_class (DVC stage `balance`)."""

from __future__ import annotations

from prefect import flow, task

from anime_face_id import balance
from anime_face_id.summary import dataset_summary
from flows._stage import fail_on_stage_error, load, run_stage
from tasks.reporting import publish_summary


@task
def balance_train(root, config) -> balance.BalanceSummary:
    return balance.balance_train(root, config)


@flow(name="balance", log_prints=True)
def balance_flow(params_path: str = "params.yaml", root: str = "."):
    return fail_on_stage_error(lambda: _balance(*load(root, params_path)))


def _balance(root_path, params) -> list[dict]:
    summary = balance_train(root_path, params.balance)
    publish_summary(
        "balance",
        summary.rows,
        f"Training rows per character (min_per_class {params.balance.min_per_class})",
    )
    publish_summary(
        "dataset",
        dataset_summary(root_path, params),
        "The data set per character: images kept / URLs rejected, faces, curated, splits",
    )
    return summary.rows


if __name__ == "__main__":
    run_stage("balance", balance_flow, brief=True)
