# Both binaries, statically linked (musl), in a minimal non-root image. The notifier-install init
# container copies /usr/local/bin/backup-notifier out of this image into backup pods, so it must
# run in any image (alpine, distroless, scratch): hence static.
#
# The base images are arguments only so that tools/image can build on local stand-ins (named as
# such) where docker.io and gcr.io cannot be reached; `docker build .` uses these defaults. The
# cache mounts need BuildKit (Docker's default builder since 23.0) or podman/buildah.
ARG RUST_IMAGE=docker.io/library/rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/static-debian12:nonroot

FROM ${RUST_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
# The crate registry and target/ persist in cache mounts, so a rebuild after a source change
# compiles this crate only instead of all ~300 crates. A cache mount is not part of the image,
# hence the binaries are copied out in the same step.
RUN --mount=type=cache,id=backup-operator-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=backup-operator-target,target=/src/target \
    cargo build --release --locked --target x86_64-unknown-linux-musl \
      --bin backup-operator --bin backup-notifier \
 && mkdir /out \
 && cp target/x86_64-unknown-linux-musl/release/backup-operator \
       target/x86_64-unknown-linux-musl/release/backup-notifier /out/

FROM ${RUNTIME_IMAGE}
COPY --from=build /out/backup-operator /usr/local/bin/backup-operator
COPY --from=build /out/backup-notifier /usr/local/bin/backup-notifier
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/backup-operator"]
CMD ["serve", "--tls-cert=/etc/backup-operator/tls/tls.crt", "--tls-key=/etc/backup-operator/tls/tls.key"]
