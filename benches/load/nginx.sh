# Sourced by load.sh and callgrind.sh: an nginx config with one worker, no access log and its
# temporary files under $work, written to $work/NAME.conf; the http block's servers come on
# stdin.
nginx_conf() { # name; the http block's servers come on stdin
  {
    cat <<NGX
worker_processes 1;
pid $work/$1.pid;
error_log $work/$1-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/$1-body; proxy_temp_path $work/$1-proxy;
  fastcgi_temp_path $work/$1-fcgi; uwsgi_temp_path $work/$1-uwsgi; scgi_temp_path $work/$1-scgi;
NGX
    cat
    echo "}"
  } > "$work/$1.conf"
}
