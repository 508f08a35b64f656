"""SuperSimpleNet family: network (torch_model), Perlin masks (perlin), losses (loss). Registers itself."""
from core.models.registry import register_family
from core.models.supersimplenet.torch_model import CPU_CONFIG, PAPER_CONFIG, SuperSimpleNet, build, make_config

FAMILY = "supersimplenet"
register_family(FAMILY, build)

__all__ = ["CPU_CONFIG", "FAMILY", "PAPER_CONFIG", "SuperSimpleNet", "build", "make_config"]
