"""``rlhflab push``: upload a run's ``final/`` (adapter, critic, value head, model card) to a Hub model repo."""

from __future__ import annotations

from pathlib import Path

from rlhflab.errors import UserError
from rlhflab.reporting.model_card import write_model_card


def format_size(num_bytes: int) -> str:
    size = float(num_bytes)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def upload_listing(final: Path) -> list[str]:
    """'relative/path (size)' for every file under ``final/``, sorted."""
    files = sorted(p for p in final.rglob("*") if p.is_file())
    return [f"{p.relative_to(final).as_posix()} ({format_size(p.stat().st_size)})" for p in files]


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def push(run_dir: Path, repo_id: str, dry_run: bool, private: bool = False) -> list[str]:
    """Upload ``run_dir/final`` to the Hub model repo ``repo_id`` (created if needed); returns the files listed.

    The model card ``final/README.md`` is (re)written first, naming ``repo_id`` in its loading snippet. With
    ``dry_run`` the files that would be uploaded are printed (relative path and size) and nothing is uploaded.
    Every failure (no final/, bad repo id, not logged in, no network, no permission) is a one-line UserError.
    """
    import huggingface_hub
    from huggingface_hub.utils import HfHubHTTPError, HFValidationError, validate_repo_id

    run_dir = Path(run_dir)
    final = run_dir / "final"
    if not (final / "adapter_model.safetensors").is_file():
        raise UserError(f"--run: {run_dir} has no final/adapter_model.safetensors: finish training it first")
    try:
        validate_repo_id(repo_id)
        if "/" not in repo_id:
            raise HFValidationError("expected NAMESPACE/NAME")
    except HFValidationError as err:
        raise UserError(f"--repo-id {repo_id!r}: not a valid Hub repository id ({first_line(err)})") from None
    write_model_card(run_dir, repo_id)
    listing = upload_listing(final)
    total = format_size(sum(p.stat().st_size for p in final.rglob("*") if p.is_file()))
    visibility = "private" if private else "public"
    if dry_run:
        print(f"dry run: would upload {len(listing)} files ({total}) from {final} to {visibility} repo {repo_id}:")
        print("\n".join(f"  {line}" for line in listing))
        return listing

    if not huggingface_hub.get_token():
        raise UserError("push: not logged in to the Hugging Face Hub: run `hf auth login` or set HF_TOKEN")
    try:
        api = huggingface_hub.HfApi()
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(
            repo_id=repo_id,
            folder_path=str(final),
            repo_type="model",
            commit_message=f"rlhflab: upload {run_dir.resolve().name}",
        )
    except HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        reason = {
            401: "the token is invalid or expired (run `hf auth login` again)",
            403: f"the token may not write to {repo_id}",
        }.get(status, first_line(err))
        raise UserError(f"push: the Hub refused the upload to {repo_id}: {reason}") from None
    except Exception as err:  # the Hub client's transport errors (DNS, refused, timeout, offline mode) vary
        raise UserError(
            f"push: could not reach the Hugging Face Hub ({type(err).__name__}: {first_line(err)})"
        ) from None
    print(f"uploaded {len(listing)} files ({total}) to {url}")
    return listing
