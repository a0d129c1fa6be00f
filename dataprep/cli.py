"""`dataprep`: convert public datasets in their original released layouts into shards.

Each dataset module defines one click command; this file collects them and turns the library's
domain errors into one line and exit status 1."""
import click

from shards.schema import SampleError

from . import demo, freihand, ganerated, h36m, imagenet, mpi_inf_3dhp, panoptic, pw3d, rhd, stb, surreal, tools
from .common import ConversionError


class DataprepGroup(click.Group):
    """Bad input, wherever a command meets it (a dataset file, a shard, an option the library
    checks), ends the command with its message instead of a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (ConversionError, SampleError, FileNotFoundError) as e:
            raise click.ClickException(str(e)) from None


@click.group(cls=DataprepGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
