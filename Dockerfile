# Both binaries, statically linked (musl), in a minimal non-root image. The notifier-install init
# container copies /usr/local/bin/backup-notifier out of this image into backup pods, so it must
# run in any image (alpine, distroless, scratch): hence static.
FROM docker.io/library/rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl \
      --bin backup-operator --bin backup-notifier

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /src/target/x86_64-unknown-linux-musl/release/backup-operator /usr/local/bin/backup-operator
COPY --from=build /src/target/x86_64-unknown-linux-musl/release/backup-notifier /usr/local/bin/backup-notifier
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/backup-operator"]
CMD ["serve", "--tls-cert=/etc/backup-operator/tls/tls.crt", "--tls-key=/etc/backup-operator/tls/tls.key"]
