"""RT-DETRv2 as a neo_rtdetr project: ``projects.RTDETRv2.modeling`` and the LazyConfigs in ``configs/``."""
