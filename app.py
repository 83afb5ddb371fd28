"""Compression Workbench: the Streamlit app. Run `streamlit run app.py` (binds to 127.0.0.1, see .streamlit/).

This file sets the title once, registers the pages, and draws the sidebar every page shares.
"""

import streamlit as st

from ui import state, view

st.set_page_config(page_title="Compression Workbench", page_icon="🗜️", layout="wide")

page = st.navigation([
    st.Page("pages/home.py", title="Home", icon="🏠", default=True),
    st.Page("pages/model.py", title="Model", icon="🧠"),
    st.Page("pages/compress.py", title="Compress", icon="🗜️"),
    st.Page("pages/runs.py", title="Runs", icon="🏃"),
    st.Page("pages/compare.py", title="Compare", icon="📊"),
    st.Page("pages/learn.py", title="Learn", icon="🎓"),
])
state.sync_url()  # keeps ?model=...&data=... in the URL on every page, so any link can be shared
view.sidebar()
page.run()
