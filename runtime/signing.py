"""Optional Ed25519 signatures of bundles: who made this manifest (`edgerec sign`).

The signature covers the exact bytes of manifest.json, which lists the sha256 and size of every
other file, so one signature vouches for the whole bundle. It is stored beside the manifest as
``manifest.sig`` (JSON: algorithm, key id, base64 signature); it cannot be listed in the manifest
it signs. ``rt.load(bundle, trusted_keys=[...])`` refuses a bundle that is unsigned, signed by a
key not in the list, or whose manifest changed after signing. See docs/threat-model.md.

Needs the ``cryptography`` package (``pip install 'edgerec[sign]'``) only when signing or when
trusted keys are given; loading without ``trusted_keys`` never imports it.

Examples:
    >>> private, public = generate_key("release.pem")                          # doctest: +SKIP
    >>> sign_bundle("out/bundle", "release.pem")                               # doctest: +SKIP
    PosixPath('out/bundle/manifest.sig')
    >>> rt.load("out/bundle", trusted_keys=["release.pub.pem"])                # doctest: +SKIP
"""
from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from .archives import is_archive
from .errors import BundleError, IntegrityError, MissingDependencyError, expected
from .io import atomic_write_bytes, atomic_write_json, strict_json_loads, write_archive
from .manifest import MANIFEST_NAME, bundle_directory, read_manifest, verify_files

SIGNATURE_NAME = "manifest.sig"
ALGORITHM = "ed25519"
MAX_SIGNATURE_BYTES = 4096
MAX_KEY_BYTES = 16384


def _crypto():
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise MissingDependencyError("cryptography", "sign", "bundle signatures") from None
    return ed25519, serialization, InvalidSignature


def public_key_path(private_path: str | os.PathLike) -> Path:
    """Where `generate_key` writes the public half of ``KEY.pem``: ``KEY.pub.pem``."""
    private_path = Path(private_path)
    stem = private_path.name[:-4] if private_path.name.endswith(".pem") else private_path.name
    return private_path.with_name(f"{stem}.pub.pem")


def generate_key(path: str | os.PathLike, overwrite: bool = False) -> tuple[Path, Path]:
    """Write a new Ed25519 private key (PEM, PKCS#8, owner-only permissions) to ``path`` and its
    public key to `public_key_path` (``KEY.pub.pem``: give this one to apps as a trusted key).

    Raises:
        BundleError: ``path`` exists and not ``overwrite``.
    """
    ed25519, serialization, _ = _crypto()
    path = Path(path)
    public = public_key_path(path)
    if not overwrite and (path.exists() or public.exists()):
        raise BundleError(expected(f"no existing key at {path} (pass overwrite)", "it exists"))
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    atomic_write_bytes(path, private_pem)
    os.chmod(path, 0o600)
    atomic_write_bytes(public, public_pem)
    return path, public


def key_id(public_key) -> str:
    """A short name for a public key: the first 16 hex digits of the sha256 of its raw bytes."""
    _, serialization, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _read_key_bytes(source) -> bytes:
    path = Path(source)
    try:
        if path.stat().st_size > MAX_KEY_BYTES:
            raise BundleError(expected(f"a key file of at most {MAX_KEY_BYTES} bytes", str(path)))
        return path.read_bytes()
    except OSError as err:
        raise BundleError(expected("a readable PEM key file", f"{path}: {err}")) from None


def load_private_key(source):
    """An Ed25519 private key from a PEM file path or PEM bytes (unencrypted PKCS#8)."""
    ed25519, serialization, _ = _crypto()
    data = source if isinstance(source, bytes) else _read_key_bytes(source)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as err:
        raise BundleError(expected("an unencrypted PEM Ed25519 private key", str(err)[:200])) from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise BundleError(expected("an Ed25519 private key", type(key).__name__))
    return key


def load_public_key(source):
    """An Ed25519 public key from: a key object, raw 32 bytes, PEM bytes, or a PEM file path
    (a private key's file yields its public half)."""
    ed25519, serialization, _ = _crypto()
    if isinstance(source, ed25519.Ed25519PublicKey):
        return source
    if isinstance(source, ed25519.Ed25519PrivateKey):
        return source.public_key()
    if isinstance(source, (bytes, bytearray)) and len(source) == 32:
        return ed25519.Ed25519PublicKey.from_public_bytes(bytes(source))
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        data = _read_key_bytes(source)
    else:
        raise BundleError(expected("a trusted key as a path, PEM bytes, raw 32 bytes or an Ed25519 key",
                                   type(source).__name__))
    if b"PRIVATE KEY" in data:
        return load_private_key(data).public_key()
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as err:
        raise BundleError(expected("a PEM Ed25519 public key", str(err)[:200])) from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise BundleError(expected("an Ed25519 public key", type(key).__name__))
    return key


def sign_manifest_bytes(manifest_bytes: bytes, private_key) -> dict:
    """The ``manifest.sig`` record of ``manifest_bytes`` signed with ``private_key``."""
    signature = private_key.sign(manifest_bytes)
    return {"algorithm": ALGORITHM, "key_id": key_id(private_key.public_key()),
            "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
            "signature": base64.b64encode(signature).decode("ascii")}


def sign_bundle(bundle, key) -> Path:
    """Sign a bundle directory or archive with private ``key`` (a PEM path or key object).

    The bundle must verify first (every sha256), so a signature never vouches for a damaged
    bundle. A directory gets ``manifest.sig``; an archive is rewritten (atomically) with it.

    Returns:
        The signature file, or the archive path.
    """
    private_key = key if hasattr(key, "sign") else load_private_key(key)
    with bundle_directory(bundle) as directory:
        manifest, raw = read_manifest(directory)
        verify_files(directory, manifest)
        atomic_write_json(Path(directory) / SIGNATURE_NAME, sign_manifest_bytes(raw, private_key))
        if is_archive(bundle):
            write_archive(directory, bundle)
            return Path(bundle)
    return Path(bundle) / SIGNATURE_NAME


def verify_signature(bundle_dir, manifest_bytes: bytes, trusted_keys) -> str:
    """Check ``bundle_dir``/manifest.sig signs ``manifest_bytes`` with one of ``trusted_keys``.

    Returns:
        The key id that signed it.

    Raises:
        IntegrityError: no signature, a malformed one, or none of the trusted keys signed these bytes.
        BundleError: ``trusted_keys`` empty or unreadable.
    """
    _, _, invalid_signature = _crypto()
    if isinstance(trusted_keys, (str, bytes, os.PathLike)) or not hasattr(trusted_keys, "__iter__"):
        trusted_keys = [trusted_keys]
    keys = [load_public_key(k) for k in trusted_keys]
    if not keys:
        raise BundleError(expected("at least one trusted key", "none"))
    path = Path(bundle_dir) / SIGNATURE_NAME
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_SIGNATURE_BYTES + 1)
    except FileNotFoundError:
        raise IntegrityError(expected(f"a signed bundle ({SIGNATURE_NAME} beside {MANIFEST_NAME})",
                                      "unsigned")) from None
    except OSError as err:
        raise IntegrityError(expected(f"a readable {SIGNATURE_NAME}", str(err))) from None
    record = strict_json_loads(data, SIGNATURE_NAME, error=IntegrityError, max_bytes=MAX_SIGNATURE_BYTES)
    if not isinstance(record, dict) or record.get("algorithm") != ALGORITHM \
            or not isinstance(record.get("signature"), str):
        raise IntegrityError(expected(f"{SIGNATURE_NAME} with algorithm {ALGORITHM!r} and a signature",
                                      record if not isinstance(record, dict) else sorted(record)))
    try:
        signature = base64.b64decode(record["signature"], validate=True)
    except ValueError as err:
        raise IntegrityError(expected(f"a base64 signature in {SIGNATURE_NAME}", str(err))) from None
    for public_key in keys:
        try:
            public_key.verify(signature, bytes(manifest_bytes))
        except invalid_signature:
            continue
        return key_id(public_key)
    raise IntegrityError(expected(f"{MANIFEST_NAME} signed by a trusted key {[key_id(k) for k in keys]}",
                                  f"a signature by key {record.get('key_id')!r} that does not match "
                                  "these manifest bytes and keys"))


def verify_bundle(bundle, trusted_keys) -> str:
    """`verify_signature` on a bundle directory or archive; also checks every file's sha256.

    Returns:
        The id of the trusted key that signed it.
    """
    with bundle_directory(bundle) as directory:
        manifest, raw = read_manifest(directory)
        signer = verify_signature(directory, raw, trusted_keys)
        verify_files(directory, manifest)
    return signer
