"""Sign a bundle's manifest with an Ed25519 key, make a key pair, or check a signature.

The signature (BUNDLE/manifest.sig) covers manifest.json, which lists every file's sha256, so
apps that load with `rt.load(BUNDLE, trusted_keys=["KEY.pub.pem"])` refuse the bundle if anything
in it changed after signing or someone else signed it. Keep KEY.pem private; ship KEY.pub.pem.
Needs: pip install 'edgerec[sign]'. Threat model: docs/threat-model.md.

Examples:
  edgerec sign --generate-key release.pem
  edgerec sign demo-out/bundle --key release.pem
  edgerec sign app-bundle.tar.gz --key release.pem
  edgerec sign demo-out/bundle --verify release.pub.pem
"""
from __future__ import annotations


def configure(parser) -> None:
    parser.add_argument("bundle", nargs="?", help="bundle directory or .tar.gz to sign or check")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--key", metavar="KEY.pem", help="private key to sign BUNDLE with")
    action.add_argument("--generate-key", metavar="KEY.pem",
                        help="write a new private key here and its public key to KEY.pub.pem")
    action.add_argument("--verify", metavar="PUBLIC.pem", action="append",
                        help="check BUNDLE's signature against this trusted public key (repeatable)")
    parser.add_argument("--overwrite", action="store_true", help="with --generate-key: replace an existing key")


def run(args) -> int:
    from edgerec.runtime import signing
    from edgerec.runtime.errors import BundleError, expected

    if args.generate_key:
        private, public = signing.generate_key(args.generate_key, overwrite=args.overwrite)
        print(f"private key: {private} (keep secret)\npublic key:  {public} (give to apps as a trusted key)")
        return 0
    if not args.bundle:
        raise BundleError(expected("a BUNDLE to sign or check", "none"))
    if args.key:
        out = signing.sign_bundle(args.bundle, args.key)
        print(f"signed {args.bundle}: {out}")
        return 0
    key = signing.verify_bundle(args.bundle, args.verify)
    print(f"{args.bundle}: signature OK (key {key})")
    return 0
