"""otc-writer's own Toolchain API client, built from the CLI's configuration (reads only)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from pydantic import SecretStr

from kotc_cli.config import Config
from services.otc_writer.otc_client import IamTokenManager, OtcClient, OtcClientConfig
from services.otc_writer.settings import Settings as WriterSettings


def writer_settings(config: Config) -> WriterSettings:
    """otc-writer's settings as the writer would read them (tool styles, limits)."""
    return WriterSettings(
        otc_api_key=SecretStr(config.require("OTC_API_KEY")),
        otc_api_url=config.require("OTC_API_URL"),
        otc_iam_url=config.require("OTC_IAM_URL"),
    )


@asynccontextmanager
async def otc_client(config: Config) -> AsyncIterator[OtcClient]:
    settings = writer_settings(config)
    async with aiohttp.ClientSession() as session:
        iam = IamTokenManager(
            session, settings.otc_iam_url, settings.otc_api_key.get_secret_value(), timeout_s=10
        )
        yield OtcClient(
            OtcClientConfig(
                api_url=settings.otc_api_url,
                rate_limit=settings.otc_rate_limit,
                timeout_s=10,
                deadline_s=20,
                max_attempts=3,
                max_body_bytes=settings.otc_max_body_bytes,
                list_max_pages=settings.otc_list_max_pages,
                list_max_items=settings.otc_list_max_items,
                retry_after_max_s=settings.otc_retry_after_max_s,
            ),
            session,
            iam,
        )
