"""Write an app bundle: only one backend's selected artifacts and the files they need (still verifiable).

The packed bundle lists only what it holds, each file with its sha256; `edgerec check` and
`rt.load` work on it as on the full bundle. An existing APP_BUNDLE is replaced only when it is a
bundle or empty.

Examples:
  edgerec pack demo-out/bundle --backend litert --out app-bundle
  edgerec pack demo-out/bundle --backend onnxruntime --out app-bundle.tar.gz
"""
from __future__ import annotations


def configure(parser) -> None:
    parser.add_argument("bundle", help="bundle directory or .tar.gz")
    parser.add_argument("--backend", required=True, choices=("litert", "onnxruntime", "tensorrt"),
                        help="the backend the app embeds")
    parser.add_argument("--out", required=True, metavar="APP_BUNDLE",
                        help="output directory, or a path ending in .tar.gz for one archive file")


def run(args) -> int:
    from edgerec.runtime.describe import describe_bundle
    from edgerec.runtime.pack import pack_bundle

    out = pack_bundle(args.bundle, args.backend, args.out)
    before, after = describe_bundle(args.bundle), describe_bundle(out)
    kept = ", ".join(a["file"] for a in after["selected"][args.backend]["artifacts"].values())
    print(f"{out}: {after['artifacts']} of {before['artifacts']} artifacts ({kept}), "
          f"{after['size_bytes'] / 1e3:.1f} KB of {before['size_bytes'] / 1e3:.1f} KB")
    return 0
