# wsmon: multi-stage build. The runtime image holds the binary and its default config only,
# runs as an unprivileged user, and reports health through /healthz.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY assets assets
COPY config config
COPY examples examples
COPY tests tests
RUN cargo build --release --locked --bin wsmon

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends curl ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /app wsmon
WORKDIR /app
COPY --from=build /src/target/release/wsmon /usr/local/bin/wsmon
COPY config/default.toml /app/config/default.toml
USER wsmon
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=2s --retries=3 CMD curl -fsS http://127.0.0.1:8000/healthz || exit 1
ENTRYPOINT ["/usr/local/bin/wsmon"]
