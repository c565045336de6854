# Multi-stage build of both binaries; `docker compose up --build` uses the api and worker targets.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p marquee-api -p marquee-worker

FROM debian:bookworm-slim AS runtime
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 marquee
USER marquee

FROM runtime AS api
COPY --from=build /src/target/release/api /usr/local/bin/api
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/api"]

FROM runtime AS worker
COPY --from=build /src/target/release/worker /usr/local/bin/worker
EXPOSE 9091
ENTRYPOINT ["/usr/local/bin/worker"]
