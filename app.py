"""Compression Workbench: the Streamlit app. Run `streamlit run app.py` (binds to 127.0.0.1, see .streamlit/).

This file makes the process safe first (ONNX Runtime telemetry off; refuses to start if torch's safe loading
is switched off), sets the title once, registers the pages, and draws the sidebar every page shares, with
a warning when the app is reachable from the network or Streamlit's usage statistics are on.
"""

import streamlit as st

from workbench.errors import WorkbenchError
from workbench.models import secure_process

st.set_page_config(page_title="Compression Workbench", page_icon="🗜️", layout="wide")
try:
    secure_process()  # before the pages import onnxruntime; refuses an environment that lets torch unpickle code
except WorkbenchError as exc:
    st.error(str(exc))
    st.stop()

from ui import state, view  # noqa: E402  (after secure_process: these import onnxruntime)

page = st.navigation([
    st.Page("views/home.py", title="Home", icon="🏠", default=True),
    st.Page("views/model.py", title="Model", icon="🧠"),
    st.Page("views/compress.py", title="Compress", icon="🗜️"),
    st.Page("views/runs.py", title="Runs", icon="🏃"),
    st.Page("views/compare.py", title="Compare", icon="📊"),
    st.Page("views/learn.py", title="Learn", icon="🎓"),
])
state.sync_url()  # keeps ?model=...&data=... in the URL on every page, so any link can be shared
view.sidebar()
# .streamlit/config.toml keeps the app local, but only when Streamlit is started in this folder: say so otherwise
if st.get_option("server.address") not in ("127.0.0.1", "localhost", "::1"):
    st.sidebar.warning(f"Served on {st.get_option('server.address') or 'every network interface'}: anyone who can "
                       "reach this port can upload models and start runs on this machine. To keep it local, start "
                       "it with `--server.address 127.0.0.1`.")
if st.get_option("browser.gatherUsageStats"):
    st.sidebar.warning("Streamlit's usage statistics are on: start the app from its folder (.streamlit/config.toml) "
                       "or with `--browser.gatherUsageStats false`.")
page.run()
