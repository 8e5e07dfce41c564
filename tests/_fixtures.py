"""
Shared builders for tests: provider and outpost configs through the real
config parser, so tests see exactly what a config file would give.
"""

from __future__ import annotations

from typing import Any

from akoutpost.config import Config, ProviderConfig, parseConfig


def providerTable(**overrides: Any) -> dict[str, Any]:
    table: dict[str, Any] = {
        "name": "app",
        "external_host": "https://app.example.com",
        "internal_host": "http://backend.internal:8080",
        "issuer": "https://id.example.com/application/o/app/",
        "client_id": "client-app",
        "client_secret": "secret-app",
    }
    table.update(overrides)
    return {k: v for k, v in table.items() if v is not None}


def providerConfig(**overrides: Any) -> ProviderConfig:
    return parseConfig({"outposts": {"main": {"providers": [providerTable(**overrides)]}}}).outposts[0].providers[0]


def config(outposts: dict[str, list[dict[str, Any]]], **outpostFields: Any) -> Config:
    data: dict[str, Any] = {"outposts": {}}
    for key, providers in outposts.items():
        table: dict[str, Any] = {
            "providers": providers,
            "http": "tcp:0:interface=127.0.0.1",
            "https": "",
            "metrics": "",
        }
        table.update(outpostFields)
        data["outposts"][key] = table
    return parseConfig(data)
