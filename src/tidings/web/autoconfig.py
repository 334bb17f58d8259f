"""Client autoconfiguration: what a mail client is told when the user types an address.

Three formats, one set of facts (:class:`ClientSettings`: the host name and the advertised
IMAP, POP3 and submission endpoints):

* Thunderbird's autoconfig, clientConfig version 1.1, at
  ``/.well-known/autoconfig/mail/config-v1.1.xml`` on the mail domain and
  ``/mail/config-v1.1.xml`` on ``autoconfig.DOMAIN`` (``?emailaddress=`` on either);
* Outlook's autodiscover, the 2006 "POX" schema: ``POST /autodiscover/autodiscover.xml`` with
  the address in ``EMailAddress``, answered with the outlook/responseschema/2006a IMAP and SMTP
  settings (implicit TLS preferred);
* an Apple configuration profile, ``GET /mobileconfig?emailaddress=``: a plist holding one
  ``com.apple.mail.managed`` payload (unsigned; the device says so when installing it).

Only domains Tidings serves get an answer (404 otherwise); the account itself is not looked up,
so the endpoints do not tell who exists. The documents are built with ElementTree and plistlib,
which escape what they carry; the request is read with expat, no DTD allowed (so no entity
expansion). The ports are ``autoconfig.*`` (the public ones), for the services whose
``listen.*`` is not empty.
"""

from __future__ import annotations

import plistlib
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any
from xml.parsers import expat

from aiohttp import web

from tidings.address import Address, AddressError, normalize_domain, parse_mailbox
from tidings.config import Config
from tidings.web.site import SITE, not_found, request_host

THUNDERBIRD_PATHS = ("/.well-known/autoconfig/mail/config-v1.1.xml", "/mail/config-v1.1.xml")
AUTODISCOVER_PATHS = ("/autodiscover/autodiscover.xml", "/Autodiscover/Autodiscover.xml")
MOBILECONFIG_PATH = "/mobileconfig"

AUTODISCOVER_RESPONSE_NS = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
OUTLOOK_RESPONSE_NS = (
    "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
)
MOBILECONFIG_TYPE = "application/x-apple-aspen-config"
XML_TYPE = "application/xml"


# --- the facts -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    protocol: str  # "imap", "pop3" or "smtp"
    port: int
    implicit_tls: bool  # False: STARTTLS (RFC 3207, RFC 2595)


# (listen/autoconfig key, protocol, implicit TLS), implicit TLS first (RFC 8314 §5.1).
SERVICES = (
    ("imaps", "imap", True),
    ("imap", "imap", False),
    ("pop3s", "pop3", True),
    ("pop3", "pop3", False),
    ("submissions", "smtp", True),
    ("submission", "smtp", False),
)


@dataclass(frozen=True)
class ClientSettings:
    hostname: str
    endpoints: tuple[Endpoint, ...]

    @classmethod
    def from_config(cls, config: Config) -> ClientSettings:
        """Each service whose listener is on and whose advertised port is not 0."""
        endpoints = tuple(
            Endpoint(protocol, getattr(config.autoconfig, key), implicit)
            for key, protocol, implicit in SERVICES
            if getattr(config.listen, key) and getattr(config.autoconfig, key)
        )
        return cls(normalize_domain(config.server.hostname), endpoints)

    def of(self, protocol: str) -> list[Endpoint]:
        return [e for e in self.endpoints if e.protocol == protocol]

    def first(self, protocol: str) -> Endpoint | None:
        found = self.of(protocol)
        return found[0] if found else None


# --- Thunderbird (clientConfig 1.1) --------------------------------------------------------------


def _serialise(root: ET.Element) -> bytes:
    data: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return data


def _text(parent: ET.Element, tag: str, text: str) -> ET.Element:
    element = ET.SubElement(parent, tag)
    element.text = text
    return element


def thunderbird_config(domain: str, settings: ClientSettings) -> bytes:
    """The clientConfig v1.1 document for ``domain``: every advertised endpoint, password
    authentication, the whole address as the user name."""
    root = ET.Element("clientConfig", version="1.1")
    provider = ET.SubElement(root, "emailProvider", id=domain)
    _text(provider, "domain", domain)
    _text(provider, "displayName", domain)
    _text(provider, "displayShortName", domain.partition(".")[0])
    for endpoint in settings.endpoints:
        if endpoint.protocol == "smtp":
            server = ET.SubElement(provider, "outgoingServer", type="smtp")
        else:
            server = ET.SubElement(provider, "incomingServer", type=endpoint.protocol)
        _text(server, "hostname", settings.hostname)
        _text(server, "port", str(endpoint.port))
        _text(server, "socketType", "SSL" if endpoint.implicit_tls else "STARTTLS")
        _text(server, "authentication", "password-cleartext")
        _text(server, "username", "%EMAILADDRESS%")
    return _serialise(root)


# --- Outlook autodiscover (2006) -----------------------------------------------------------------


class _RequestReader:
    """Collects the text of the first EMailAddress element (any namespace)."""

    def __init__(self) -> None:
        self.address: str | None = None
        self._parts: list[str] | None = None

    def start(self, name: str, attrs: dict[str, str]) -> None:
        if self.address is None and name.rpartition(" ")[2] == "EMailAddress":
            self._parts = []

    def end(self, name: str) -> None:
        if self._parts is not None:
            self.address = "".join(self._parts).strip()
            self._parts = None

    def text(self, data: str) -> None:
        if self._parts is not None:
            self._parts.append(data)


def _refuse_dtd(*_: Any) -> None:
    raise ValueError("a document type declaration is not accepted")


def autodiscover_address(body: bytes) -> str:
    """The ``EMailAddress`` of an autodiscover request; ValueError if it is not XML, has a
    DTD, or names no address."""
    reader = _RequestReader()
    parser = expat.ParserCreate(namespace_separator=" ")
    parser.StartDoctypeDeclHandler = _refuse_dtd
    parser.EntityDeclHandler = _refuse_dtd
    parser.StartElementHandler = reader.start
    parser.EndElementHandler = reader.end
    parser.CharacterDataHandler = reader.text
    try:
        parser.Parse(body, True)
    except expat.ExpatError as e:
        raise ValueError(f"not an XML document: {e}") from None
    if not reader.address:
        raise ValueError("no EMailAddress in the request")
    return reader.address


def _protocol(account: ET.Element, kind: str, host: str, endpoint: Endpoint, login: str) -> None:
    protocol = ET.SubElement(account, "Protocol")
    _text(protocol, "Type", kind)
    _text(protocol, "Server", host)
    _text(protocol, "Port", str(endpoint.port))
    _text(protocol, "DomainRequired", "off")
    _text(protocol, "LoginName", login)
    _text(protocol, "SPA", "off")
    if endpoint.implicit_tls:
        _text(protocol, "SSL", "on")
    else:
        _text(protocol, "SSL", "off")
        _text(protocol, "Encryption", "TLS")
    _text(protocol, "AuthRequired", "on")


def autodiscover_response(address: str, settings: ClientSettings) -> bytes:
    """The Outlook 2006 answer for ``address``: IMAP and SMTP, implicit TLS where offered."""
    # The namespaces are written as plain xmlns attributes so that each is the default one
    # where it applies, as clients expect; the children inherit them.
    root = ET.Element("Autodiscover", xmlns=AUTODISCOVER_RESPONSE_NS)
    response = ET.SubElement(root, "Response", xmlns=OUTLOOK_RESPONSE_NS)
    account = ET.SubElement(response, "Account")
    _text(account, "AccountType", "email")
    _text(account, "Action", "settings")
    for kind, protocol in (("IMAP", "imap"), ("POP3", "pop3"), ("SMTP", "smtp")):
        endpoint = settings.first(protocol)
        if endpoint is not None and not (protocol == "pop3" and settings.first("imap")):
            _protocol(account, kind, settings.hostname, endpoint, address)
    return _serialise(root)


# --- Apple configuration profile -----------------------------------------------------------------


def _reverse(domain: str) -> str:
    return ".".join(reversed(domain.split(".")))


def mobileconfig(address: Address, settings: ClientSettings) -> bytes:
    """A configuration profile with one mail account (IMAP, else POP3; SMTP with the same
    password). Its identifiers derive from the address and host, so downloading it again
    replaces the installed profile instead of adding a second one."""
    incoming = settings.first("imap") or settings.first("pop3")
    outgoing = settings.first("smtp")
    if incoming is None or outgoing is None:
        raise ValueError("no incoming or no outgoing mail service is advertised")
    login = address.key
    seed = f"tidings:{login}:{settings.hostname}"
    base = f"{_reverse(address.domain)}.tidings.{uuid.uuid5(uuid.NAMESPACE_URL, seed).hex}"
    account: dict[str, Any] = {
        "PayloadType": "com.apple.mail.managed",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{base}.mail",
        "PayloadUUID": str(uuid.uuid5(uuid.NAMESPACE_URL, seed + ":mail")).upper(),
        "PayloadDisplayName": f"Mail ({login})",
        "EmailAccountDescription": login,
        "EmailAccountType": "EmailTypeIMAP" if incoming.protocol == "imap" else "EmailTypePOP",
        "EmailAddress": login,
        "IncomingMailServerHostName": settings.hostname,
        "IncomingMailServerPortNumber": incoming.port,
        "IncomingMailServerUseSSL": True,
        "IncomingMailServerAuthentication": "EmailAuthPassword",
        "IncomingMailServerUsername": login,
        "OutgoingMailServerHostName": settings.hostname,
        "OutgoingMailServerPortNumber": outgoing.port,
        "OutgoingMailServerUseSSL": True,
        "OutgoingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingMailServerUsername": login,
        "OutgoingPasswordSameAsIncomingPassword": True,
    }
    profile = {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": base,
        "PayloadUUID": str(uuid.uuid5(uuid.NAMESPACE_URL, seed)).upper(),
        "PayloadDisplayName": f"{address.domain} mail",
        "PayloadDescription": f"The mail account {login} on {settings.hostname}.",
        "PayloadOrganization": address.domain,
        "PayloadRemovalDisallowed": False,
        "PayloadContent": [account],
    }
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML)


# --- handlers ------------------------------------------------------------------------------------


def _address_param(request: web.Request) -> Address | None:
    """``?emailaddress=``; None when absent; HTTPBadRequest when it is not an address."""
    text = request.query.get("emailaddress", "").strip()
    if not text:
        return None
    try:
        return parse_mailbox(text)
    except AddressError:
        raise web.HTTPBadRequest(text="emailaddress: not an address\n") from None


async def thunderbird(request: web.Request) -> web.Response:
    site = request.app[SITE]
    address = _address_param(request)
    if address is not None:
        domain = address.domain
    else:  # autoconfig.DOMAIN, or the domain itself for the .well-known path
        host = request_host(request)
        domain = host.removeprefix("autoconfig.")
    if not domain or not await site.serves(domain):
        return not_found("not a domain served here")
    body = thunderbird_config(normalize_domain(domain), ClientSettings.from_config(site.config))
    return web.Response(body=body, content_type=XML_TYPE, charset="utf-8")


async def autodiscover(request: web.Request) -> web.Response:
    site = request.app[SITE]
    try:
        address = parse_mailbox(autodiscover_address(await request.read()))
    except ValueError as e:  # AddressError is one
        raise web.HTTPBadRequest(text=f"{e}\n") from None
    if not await site.serves(address.domain):
        return not_found("not a domain served here")
    body = autodiscover_response(address.key, ClientSettings.from_config(site.config))
    return web.Response(body=body, content_type=XML_TYPE, charset="utf-8")


async def apple_profile(request: web.Request) -> web.Response:
    site = request.app[SITE]
    address = _address_param(request)
    if address is None:
        raise web.HTTPBadRequest(text="emailaddress: missing\n")
    if not await site.serves(address.domain):
        return not_found("not a domain served here")
    try:
        body = mobileconfig(address, ClientSettings.from_config(site.config))
    except ValueError as e:
        return not_found(str(e))
    filename = f"{address.domain}.mobileconfig"
    return web.Response(
        body=body,
        content_type=MOBILECONFIG_TYPE,
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def add_routes(app: web.Application) -> None:
    for path in THUNDERBIRD_PATHS:
        app.router.add_get(path, thunderbird)
    for path in AUTODISCOVER_PATHS:
        app.router.add_post(path, autodiscover)
    app.router.add_get(MOBILECONFIG_PATH, apple_profile)
