"""Fetching ``image_url`` images from remote hosts, only from an allowlist (server-side request forgery).

Nothing is fetched unless the operator lists hosts or networks (``--allow-remote``). Then:

1. the URL must be ``http``/``https`` without credentials, and its host must match a host
   entry (``images.example.org``, ``*.example.org``) or be an address inside a network entry;
2. the host is resolved and **every** address it resolves to must be allowed: inside a
   network entry, or, for a host entry, a public address. Private, loopback, link-local,
   multicast and reserved addresses are refused unless a network entry names them
   (``127.0.0.1``, ``10.0.0.0/8``);
3. the connection goes to the address that was checked (the URL's host is kept in the
   ``Host`` header and as the TLS server name), so a second DNS answer cannot swap in another
   address between the check and the connection;
4. redirects are followed by hand, at most ``max_redirects``, each target checked from step 1;
5. the body is read in chunks and abandoned past ``max_bytes``; proxies from the environment
   are ignored (a proxy would connect on the server's behalf, past these checks).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Awaitable, Callable, Sequence

import httpx

from ..errors import ConfigError, option_hint
from .api_errors import APIError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: ``(host, port) -> addresses``; the default asks the system resolver.
Resolver = Callable[[str, int], Awaitable[list[str]]]


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (IPv4 and IPv6), in the resolver's order."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _address(text: str) -> IPAddress:
    address = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone index
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    return address


class RemotePolicy:
    """Which URLs may be fetched (see the module docstring).

    Args:
        allow: host entries (``example.org``, ``*.example.org``) and network entries
            (``203.0.113.7``, ``10.0.0.0/8``, ``::1``).
        resolver: how host names are resolved (tests pass a fake one).

    Raises:
        ConfigError: an entry that is neither a host name nor an address / network.
    """

    def __init__(self, allow: Sequence[str], resolver: Resolver = system_resolver) -> None:
        self.hosts: list[str] = []
        self.networks: list[IPNetwork] = []
        for raw in allow:
            entry = raw.strip().lower()
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            name = entry[2:] if entry.startswith("*.") else entry
            if not name or any(c in name for c in "/:@?#[] ") or name.startswith("."):
                raise ConfigError(f"{raw!r} is neither a host name (example.org, *.example.org) nor an IP address or "
                                  f"network (203.0.113.0/24) ({option_hint('allow_remote', 'HOST')})")
            self.hosts.append(entry)
        self.resolver = resolver

    @property
    def enabled(self) -> bool:
        return bool(self.hosts or self.networks)

    def host_listed(self, host: str) -> bool:
        """Whether ``host`` matches a host entry (``*.example.org`` matches sub-domains only)."""
        host = host.lower().rstrip(".")
        for entry in self.hosts:
            if entry.startswith("*.") and host.endswith(entry[1:]) and host != entry[2:]:
                return True
            if host == entry:
                return True
        return False

    def _in_networks(self, address: IPAddress) -> bool:
        return any(address.version == net.version and address in net for net in self.networks)

    async def vet(self, url: httpx.URL, *, param: str) -> str:
        """The address to connect to for ``url``, after every check; :class:`APIError` 400 if refused."""
        def refuse(reason: str) -> APIError:
            return APIError(400, f"remote URL refused: {reason}", code="remote_url_refused", param=param)

        if not self.enabled:
            raise refuse("this server fetches no remote URLs (its operator allows hosts with --allow-remote)")
        if url.scheme not in ("http", "https"):
            raise refuse(f"only http and https URLs are fetched, not {url.scheme or 'a relative URL'}")
        if url.userinfo:
            raise refuse("URLs with credentials are not fetched")
        host = url.host
        if not host:
            raise refuse("the URL has no host")
        try:
            literal: IPAddress | None = _address(host)
        except ValueError:
            literal = None
        listed = literal is None and self.host_listed(host)
        if literal is not None:
            addresses = [literal]
        elif listed:
            try:
                port = url.port or (443 if url.scheme == "https" else 80)
                addresses = [_address(a) for a in await self.resolver(host, port)]
            except (OSError, ValueError):
                raise refuse(f"host {host} does not resolve") from None
            if not addresses:
                raise refuse(f"host {host} does not resolve")
        else:
            raise refuse(f"host {host} is not on this server's allowlist")
        for address in addresses:
            if self._in_networks(address):
                continue
            if listed and address.is_global and not address.is_multicast:
                continue
            what = "a private, loopback, link-local or reserved" if not address.is_global else "an unlisted"
            raise refuse(f"host {host} resolves to {what} address ({address}) that is not allowlisted")
        return str(addresses[0])


class RemoteFetcher:
    """Downloads one image over HTTP(S) under a :class:`RemotePolicy`.

    Args:
        policy: which URLs may be fetched.
        max_bytes: largest body accepted.
        timeout: seconds for the whole fetch (resolving, connecting, redirects, every read):
            one deadline, so a server trickling a byte at a time cannot stretch it.
        max_redirects: redirects followed (each one checked again).
    """

    def __init__(self, policy: RemotePolicy, *, max_bytes: int, timeout: float, max_redirects: int) -> None:
        self.policy = policy
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.max_redirects = max_redirects

    async def fetch(self, url: str, *, param: str) -> bytes:
        """The body of ``url`` (status 200), following checked redirects; :class:`APIError` 400 otherwise."""
        try:
            async with asyncio.timeout(self.timeout):
                return await self._fetch(url, param)
        except TimeoutError:
            raise self._failed(param, f"timed out (this server allows {self.timeout:g} s per remote image)") from None

    async def _fetch(self, url: str, param: str) -> bytes:
        try:
            current = httpx.URL(url)
        except (httpx.InvalidURL, TypeError):
            raise APIError(400, "remote URL refused: not a valid URL", code="remote_url_refused", param=param) from None
        async with httpx.AsyncClient(trust_env=False, follow_redirects=False, timeout=self.timeout) as client:
            for _ in range(self.max_redirects + 1):
                address = await self.policy.vet(current, param=param)
                request = client.build_request(
                    "GET", current.copy_with(host=address),
                    headers={"Host": current.netloc.decode("ascii"), "Accept": "image/*"},
                    # TLS checks the certificate against the URL's host, not the address.
                    extensions={"sni_hostname": current.host} if current.scheme == "https" else {},
                )
                try:
                    response = await client.send(request, stream=True)
                except httpx.TimeoutException:
                    raise self._failed(param, "timed out") from None
                except httpx.HTTPError:
                    raise self._failed(param, "the connection failed") from None
                try:
                    if response.is_redirect:
                        location = response.headers.get("location", "")
                        try:
                            current = current.join(location)
                        except httpx.InvalidURL:
                            raise self._failed(param, "it redirected to an invalid URL") from None
                        continue
                    if response.status_code != 200:
                        raise self._failed(param, f"the remote server answered HTTP {response.status_code}")
                    return await self._read(response, param)
                finally:
                    await response.aclose()
        raise self._failed(param, f"more than {self.max_redirects} redirects")

    async def _read(self, response: httpx.Response, param: str) -> bytes:
        too_large = APIError(413, f"the remote image is larger than this server's limit of {self.max_bytes} bytes",
                             code="image_too_large", param=param)
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            raise too_large
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in response.aiter_bytes():  # decoded: a gzip bomb counts at full size
                size += len(chunk)
                if size > self.max_bytes:
                    raise too_large
                chunks.append(chunk)
        except httpx.TimeoutException:
            raise self._failed(param, "timed out") from None
        except httpx.HTTPError:
            raise self._failed(param, "the connection failed") from None
        return b"".join(chunks)

    @staticmethod
    def _failed(param: str, reason: str) -> APIError:
        return APIError(400, f"could not fetch the remote image: {reason}", code="remote_fetch_failed", param=param)
