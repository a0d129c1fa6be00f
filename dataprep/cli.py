"""`dataprep`: convert public datasets in their original released layouts into shards.

Each dataset module defines one click command; this file only collects them."""
import click

from . import freihand, tools, rhd, stb, panoptic, ganerated, imagenet, demo
from . import h36m, pw3d, mpi_inf_3dhp, surreal


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli():
    """Convert datasets (original layouts) into webdataset shards with DALI indexes.

    Every command reads SRC_ROOT as the dataset was released and writes OUT_DIR/<split>/ with
    shard-%06d.tar, a .idx per shard and manifest.json. Reruns resume after the last complete
    shard. `verify` and `inspect` check and show any shard set."""


cli.add_command(freihand.cli)
cli.add_command(rhd.cli)
cli.add_command(stb.cli)
cli.add_command(panoptic.cli)
cli.add_command(panoptic.cli_2d)
cli.add_command(ganerated.cli)
cli.add_command(imagenet.cli)
cli.add_command(h36m.cli)
cli.add_command(pw3d.cli)
cli.add_command(mpi_inf_3dhp.cli)
cli.add_command(surreal.cli)
cli.add_command(demo.cli)
cli.add_command(tools.verify)
cli.add_command(tools.inspect)

if __name__ == "__main__":
    cli()
