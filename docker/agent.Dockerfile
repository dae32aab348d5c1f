# The agent image: `understudy agent` and PostgreSQL 15 from Debian, running as an unprivileged user (uid 999).
# Build from the repository's root:  docker build -f docker/agent.Dockerfile -t understudy-agent:0.1.0 .
# A Sandbox's StatefulSet runs it with `agent --listen 0.0.0.0:8080 --token-file … --stop-servers`; its state
# (the sandbox's cluster and its forks) lives on the PVC at /var/lib/understudy (XFS for reflink forks).

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends libssl-dev pkg-config \
    && cargo build --release --locked -p understudy-cli --features otlp --bin understudy

FROM debian:bookworm-slim
ARG UID=999
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends postgresql-15 postgresql-client-15 ca-certificates \
       libssl3 xfsprogs \
    && rm -rf /var/lib/apt/lists/* \
    # Debian's packaged cluster is not ours: the agent makes its own.
    && rm -rf /var/lib/postgresql/15/main /etc/postgresql/15/main \
    && groupadd --gid "$UID" understudy \
    && useradd --uid "$UID" --gid "$UID" --home-dir /var/lib/understudy --no-create-home understudy \
    && install -d -o understudy -g understudy -m 0755 /var/lib/understudy
COPY --from=build /src/target/release/understudy /usr/local/bin/understudy
ENV PG_BINDIR=/usr/lib/postgresql/15/bin \
    UNDERSTUDY_STATE_DIR=/var/lib/understudy
USER 999:999
WORKDIR /var/lib/understudy
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/understudy"]
CMD ["agent", "--listen", "0.0.0.0:8080", "--stop-servers"]
