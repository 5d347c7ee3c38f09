"""``declcnn info``: what this build is and how it will run."""


from . import main
from ._common import user_errors


@main.command()
@user_errors
def info():
    """Version, OpenMP, threads, BLAS and compiler flags of this build."""
    from .. import show_config

    show_config()
