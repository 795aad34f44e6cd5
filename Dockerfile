# Build: docker build -t hallmark .
# Run:   docker run -p 8443:8443 -p 8080:8080 -v hallmark-data:/data \
#          -v "$PWD/root-passphrase.txt:/run/secrets/root_passphrase:ro" \
#          -e HALLMARK_ROOT_PASSPHRASE_FILE=/run/secrets/root_passphrase hallmark
#        (the file's first line is the root passphrase, readable by uid 10001)
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# The build settings: SQLite built to flush with fdatasync (docs/ARCHITECTURE.md).
COPY .cargo .cargo
COPY src src
COPY migrations migrations
COPY templates templates
COPY static static
COPY hallmark.example.toml ./
COPY benches benches
RUN cargo build --release --locked --bin hallmark

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home-dir /data --uid 10001 hallmark \
 && mkdir /data && chown hallmark /data
COPY --from=build /src/target/release/hallmark /usr/local/bin/hallmark
USER hallmark
WORKDIR /data
VOLUME /data
# MALLOC_ARENA_MAX: glibc's per-thread arenas made RSS creep under a long
# soak; two arenas keep it nearly flat (docs/RELIABILITY.md, soak).
# The first administrator's one-time password goes to a file in the
# volume, not to the container's logs.
ENV HALLMARK_SERVER__HTTPS_LISTEN=0.0.0.0:8443 \
    HALLMARK_SERVER__HTTP_LISTEN=0.0.0.0:8080 \
    HALLMARK_SERVER__INITIAL_PASSWORD_FILE=/data/initial-admin-password \
    MALLOC_ARENA_MAX=2
EXPOSE 8443 8080
HEALTHCHECK --interval=30s --timeout=3s CMD ["/bin/bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /readyz HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q '200 OK' <&3"]
ENTRYPOINT ["hallmark", "--data-dir", "/data", "--log-format", "json"]
CMD ["serve"]
