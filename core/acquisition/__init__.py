"""Frame sources: GenICam cameras (harvesters), folder replay, a synthetic camera; one FrameSource protocol."""
from core.acquisition.base import (Frame, FrameSource, SourceCounters, SourceError, SourceState, SourceStatus,
                                   host_now)
from core.acquisition.factory import open_source, source_from_settings
from core.acquisition.folder import FolderSource
from core.acquisition.genicam import (CameraConfig, DeviceDescription, GenICamSource, list_devices,
                                      resolve_producers, simulator_producer)
from core.acquisition.pixels import SUPPORTED_PIXEL_FORMATS, PixelFormatError, to_station_image
from core.acquisition.synthetic import SyntheticSource

__all__ = [
    "CameraConfig", "DeviceDescription", "FolderSource", "Frame", "FrameSource", "GenICamSource",
    "PixelFormatError", "SUPPORTED_PIXEL_FORMATS", "SourceCounters", "SourceError", "SourceState",
    "SourceStatus", "SyntheticSource", "host_now", "list_devices", "open_source", "resolve_producers",
    "simulator_producer", "source_from_settings", "to_station_image",
]
