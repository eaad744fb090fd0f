"""Agent-framework adapters: each framework's own tool seam, guarded by agentauth.

One module per framework (``langchain``, ``crewai``, ``openai_agents``, ``agno``,
``google_adk``, ``microsoft_agent_framework``), each behind its optional extra
(``pip install 'agentauth-k8s[langchain]'``, ...; ``agentauth-k8s[integrations]`` installs them
all).
The rules (capability checks, Ask API, just-in-time approval, refusal texts) live once in
:mod:`agentauth.integrations.guard`. Nothing is imported here, so importing this package never
pulls in a framework: import the adapter module you use.
"""
