"""cluster.yaml passes the schema that ships inside the installed ray package and Ray's own config
preparation (the checks `ray up` runs before it starts anything); broken copies fail."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[2] / "cluster.yaml"
SCHEMA = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def schema_errors(config: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(SCHEMA)
    return [f"{'/'.join(map(str, e.path)) or '<root>'}: {e.message}"
            for e in validator.iter_errors(config)]


@pytest.fixture()
def cluster() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_cluster_yaml_is_valid_for_ray_up(cluster):
    assert schema_errors(cluster) == []
    prepared = prepare_config(copy.deepcopy(cluster))  # merges the AWS provider defaults
    validate_config(prepared)  # raises on any problem
    nodes = prepared["available_node_types"]
    assert nodes[prepared["head_node_type"]]["resources"] == {"CPU": 0}
    gpu_types = [n for n in nodes.values() if n["resources"].get("GPU")]
    assert len(gpu_types) >= 2 and all(n["min_workers"] == 0 for n in gpu_types)
    assert all(n["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
               for n in gpu_types)
    assert any("TRAIN_DRIVER" in n["resources"] for n in nodes.values())
    assert prepared["docker"]["image"].startswith("rayproject/ray:2.60")


def test_misspelt_key_fails(cluster):
    cluster["idle_timeout_minute"] = cluster.pop("idle_timeout_minutes")
    errors = schema_errors(cluster)
    assert any("idle_timeout_minute" in e for e in errors)


def test_fractional_resource_fails(cluster):
    cluster["available_node_types"]["gpu_a10g"]["resources"]["GPU"] = 0.5
    errors = schema_errors(cluster)
    assert any("gpu_a10g" in e and "integer" in e for e in errors)
